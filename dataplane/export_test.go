package dataplane

// NewlySynced is newlySynced for the external tests.
var NewlySynced = newlySynced
