"""Hardware state as plain objects (memory frames, TLBs, page tables, registers), shared by
the actors and changed only at their scheduling points. Each platform issue adds its own."""
