"""The model repository shared by trainer (writes) and server (reads); torch-free."""
