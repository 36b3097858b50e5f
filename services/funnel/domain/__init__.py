"""The funnel service's pure domain: SPEC.md "Definitions" over in-memory events, no I/O."""
