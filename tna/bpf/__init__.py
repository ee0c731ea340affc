"""libbpf binding and the ABI shared with the datapath."""
