package qemu

// DetectAccel is detectAccel, for tests.
var DetectAccel = detectAccel
