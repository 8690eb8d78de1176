"""Few-shot probes on frozen features: linear and k-NN probes, label-budget sweeps, classical features, statistics."""
