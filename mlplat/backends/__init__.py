"""External systems behind small protocols, each with an embedded and a production implementation."""
