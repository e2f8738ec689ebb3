"""The gRPC API: server wiring, servicers (thin: proto in, one domain call, proto out), conversions."""
