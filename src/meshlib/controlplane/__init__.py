"""The control plane: the server that serves policy (``app``) and the client side that watches it (``client``)."""
