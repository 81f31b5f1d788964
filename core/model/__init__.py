"""The model being pruned: finding it (folder, GGUF, hub id, the embedded demo), loading it safely,
its architecture (decoder blocks and prunable modules), the devices it runs on, and where its blocks
live while it is pruned (offload)."""
