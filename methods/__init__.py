"""In-tree methods: one module per method, each registering one Distiller."""
