"""gRPC servicers: thin adapters from the wire types to the store and the monitor."""
