"""The L0 hypervisor logic, modelled function by function on the kernel, with quirks."""
