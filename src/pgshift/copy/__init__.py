"""The data path: value conversion, chunking, COPY workers, checkpoints, rejects."""
