"""The CLIP similarity service: a gRPC server answering global and snippet similarity,
and the client library the labeler uses."""
