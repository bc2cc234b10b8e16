"""Access requests: their model, validation, lifecycle and the approver's proof."""
