package net

// NewTestNS and InNS give the external tests (package net_test) a network
// namespace of their own and a way to act in it.
var (
	NewTestNS = newNS
	InNS      = inNS
)
