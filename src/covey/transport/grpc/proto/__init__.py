"""The protocol buffers of the gRPC transport (generated from ``covey.proto``)."""
