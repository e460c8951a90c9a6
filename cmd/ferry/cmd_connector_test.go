package main

import "testing"

func TestDomainWanted(t *testing.T) {
	tests := []struct {
		patterns []string
		name     string
		want     bool
	}{
		{nil, "anything", true},
		{[]string{"web-*"}, "web-01", true},
		{[]string{"web-*"}, "db-01", false},
		{[]string{"db-01"}, "db-01", true},
		{[]string{"db-01"}, "db-011", false},
		{[]string{"web-*", "db-0?"}, "db-02", true},
		{[]string{"web-*", "db-0?"}, "mail", false},
	}
	for _, tt := range tests {
		if got := domainWanted(tt.patterns, tt.name); got != tt.want {
			t.Errorf("domainWanted(%q, %q) = %v, want %v", tt.patterns, tt.name, got, tt.want)
		}
	}
}
