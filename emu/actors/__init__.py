"""The platform actors (Trio tasks under the engine's controller): pCPUs, vCPUs, the
Ultravisor, the memory controller, the host/QEMU accessor, the nested L1 hypervisor and the
pKVM host CPU. Each platform issue adds its own; the engine demos need none."""
