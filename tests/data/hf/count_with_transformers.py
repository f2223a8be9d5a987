import json, sys, glob, os, warnings, logging
warnings.filterwarnings("ignore")
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM
transformers.logging.set_verbosity_error()
root = sys.argv[1]
out = {"transformers": transformers.__version__, "torch": torch.__version__, "counts": {}}
paths = sorted(glob.glob(f"{root}/*/config.json") + glob.glob(f"{root}/probes/*/config.json"))
for p in paths:
    name = os.path.relpath(os.path.dirname(p), root)
    d = json.load(open(p))
    try:
        cfg = AutoConfig.for_model(**d)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(cfg)
        # parameters() yields tied tensors once
        n = sum(t.numel() for t in m.parameters())
        out["counts"][name] = n
    except Exception as e:
        out["counts"][name] = f"ERROR {type(e).__name__}: {str(e)[:200]}"
    print(name, out["counts"][name], flush=True)
json.dump(out, open("/tmp/gt/counts.json", "w"), indent=1)
