"""What a benchmark run can be asked for: the tasks, the backends and the model names. Plain tuples, so the command
line reads them without importing torch, and the harness imports them without going through the package."""

TASKS = ("estimate", "generate", "edit", "describe_pose", "describe_image")
POSE_TASKS = ("estimate", "generate", "edit")
BACKENDS = ("ref-hf-eager", "ref-sdk-eager", "sdk-fast", "sdk-fast-compiled", "onnxruntime")
MODEL_NAMES = ("unipose-tiny", "unipose-7b")  # or an SDK model directory
