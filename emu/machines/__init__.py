"""Machines: platforms assembled from actors, KVM and hardware on the engine's Machine.

``power.PowerMachine`` is what every POWER platform shares (memory, pCPUs, vCPUs, QEMU, the
L0 KVM); ``svm.SvmMachine`` extends it with the Ultravisor and its secure VMs. Scenarios
and examples build one of these; actors see a machine only through ``actors.platform``.
"""
