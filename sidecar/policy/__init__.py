"""Policy files: model, strict loader, JSON Schema."""
