"""`python -m pipeline`: the entry point, the only code that sees Hydra's DictConfig."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from pipeline import distributed, write
from pipeline.config import CONF_DIR, Config, UserError, check_override_keys, register
from pipeline.run import Stopped, evaluate


def main() -> None:
    """`python -m pipeline`: compose the config with Hydra, run, one line per user error."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    register()
    try:
        check_override_keys(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def run(dcfg: DictConfig) -> None:
        cfg: Config = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
        out_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
        try:
            evaluate(cfg, out_dir)
        except (UserError, Stopped) as e:
            print(f"error: {e}", file=sys.stderr)
            with contextlib.suppress(OSError):  # for pipeline.summarize: why a sweep job failed
                (out_dir / write.ERROR_FILE).write_text(f"{e}\n")
            sys.exit(e.exit_code)
        finally:
            distributed.teardown()

    run()


if __name__ == "__main__":
    main()
