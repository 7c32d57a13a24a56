"""Faults injected into a running stage (`spec`), carried out (`injector`) and assessed (`timeline`)."""
