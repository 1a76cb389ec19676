package qemu

// MinimalDTB is minimalDTB for the external tests.
var MinimalDTB = minimalDTB
