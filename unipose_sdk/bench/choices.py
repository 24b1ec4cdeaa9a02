"""What a benchmark run can be asked for: the tasks, the backends and the model names. Plain tuples, so the command
line reads them without importing torch, and the harness imports them without going through the package."""

TASKS = ("estimate", "generate", "edit", "describe_pose", "describe_image")
POSE_TASKS = ("estimate", "generate", "edit")
BACKENDS = ("ref-hf-eager", "ref-sdk-eager", "sdk-fast", "sdk-fast-compiled", "onnxruntime")
MODEL_NAMES = ("unipose-tiny", "unipose-7b", "chatpose-tiny", "chatpose-13b")  # or an SDK model directory
# Presets benchmarked with seeded RANDOM weights (latency only: it does not depend on the weights' values).
RANDOM_MODELS = ("unipose-7b", "chatpose-tiny", "chatpose-13b")
# What a ChatPose model can be timed on (it reads no poses: no edit, no pose description).
CHATPOSE_TASKS = ("estimate", "generate", "describe_image")
