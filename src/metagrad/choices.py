"""The values a named setting can take, in one place: the torch-free config checks them, and so does the engine
when it is called directly."""

ALGOS = ("maml", "fomaml", "reptile", "joint")
FAMILIES = ("sinusoid", "linreg", "omniglot", "miniimagenet")
IMAGE_FAMILIES = ("omniglot", "miniimagenet")
IMAGE_MODELS = ("conv4", "mlp-bn")
MODELS = ("mlp", "linear", *IMAGE_MODELS)
ACTIVATIONS = ("relu", "tanh")
INNER_RULES = ("sgd", "adam")
OUTER_OPTIMIZERS = ("adam", "sgd")
BATCHING = ("auto", "vmap", "loop")
INNER_SAMPLING = ("cycle", "replacement")
INNER_STATE = ("fresh", "carried")
TAILS = ("separate", "shared")  # where the last inner step's minibatch comes from (MAML's default first)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
