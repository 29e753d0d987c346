"""The tests' helper modules, not tests themselves: raw datasets in their real layouts, pipeline
data, trained runs for predict and report, the command-line checks and the DDP workers that the
torchrun tests launch."""
