"""``dynprune train | test | main``: train an agent on DynPrune-v0, evaluate it, report.

Registered with the ``dynprune`` command by name in ``dynprune.cli.COMMAND_MODULES``, imported only
when the parser is built, so ``import dynprune`` never imports agents or envs (the arrows go one way).

Run directory layout (``--run-dir runs/NAME``)::

    dynprune-run.json    the marker: this folder is a run, and the names below are what it writes
                         (--force deletes only those; a folder without it is never written or deleted)
    config.json          the arguments of the run (written first; a run is never overwritten without --force)
    metrics.jsonl        one StepRecord per training step, appended and fsynced as it happens
    train_log.jsonl      one line per episode: timesteps, reward, loss, epsilon
    checkpoint.zip       latest model (+ checkpoint_replay.pkl) for --resume (agents.checkpoint)
    agent.zip            the trained agent (+ agent.zip.agent.json sidecar)
    test/<agent>.jsonl   held-out evaluation records per agent; test/summary.json
    report/              plots and report.txt (``dynprune report``)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agents.checkpoint import CHECKPOINT, load_checkpoint, resume_seed, rewind_logs, save_checkpoint
from agents.evaluation import evaluate_run
from dynprune.fileio import WRITE_ERRNOS, WriteFailed, atomic_write_json, describe_os_error
from dynprune.runfolder import MARKER, RunMarker, open_run_folder, prepare_run_folder
from envs.run_config import RunConfig

#: What a train run writes (top-level names, glob patterns): ``--force`` deletes these and nothing else.
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "train_log.jsonl", "checkpoint.zip", "checkpoint_replay.pkl",
               "agent.zip", "agent.zip.agent.json", "test", "report", ".*.tmp")
#: Settings a resumed run may change (the rest must stay as in config.json).
RESUME_MAY_CHANGE = ("episodes", "checkpoint_every", "test_prompts", "test_timing", "tensorboard")
#: Arguments of the command line that are not settings of the run (never written to config.json).
NOT_SETTINGS = ("fn", "force", "resume", "run_dir", "verbose", "given_options")


class _RecordingCallback:
    """Builds an SB3 callback that logs step records, episode summaries and checkpoints."""

    @staticmethod
    def make(run_dir: Path, checkpoint_every: int, progress: Any, agent_name: str, first_episode: int = 0) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        from dynprune.records import append_record

        class Callback(BaseCallback):
            def _on_training_start(self) -> None:
                self.last_checkpoint = self.model.num_timesteps

            def _on_rollout_start(self) -> None:
                # Between env steps every step so far has its record, its stored transition and its
                # gradient step, so a checkpoint here agrees with the logs (agents.checkpoint).
                steps = self.model.num_timesteps
                if steps // checkpoint_every > self.last_checkpoint // checkpoint_every:
                    save_checkpoint(self.model, run_dir)
                    self.last_checkpoint = steps

            def _on_step(self) -> bool:
                for info, done, reward in zip(self.locals["infos"], self.locals["dones"], self.locals["rewards"],
                                              strict=True):
                    text = info.get("record", "")
                    rec = json.loads(text) if text else {}
                    if rec:
                        rec["agent"] = agent_name
                        # the env numbers episodes from 0 in every process; a resumed run goes on
                        rec["episode"] = first_episode + int(rec["episode"])
                        append_record(run_dir / "metrics.jsonl", rec)
                        # TensorBoard (--tensorboard): means over each SB3 log interval
                        self.logger.record_mean("dynprune/reward", float(rec["reward"]))
                        self.logger.record_mean("dynprune/speedup", float(rec["speedup"]))
                        self.logger.record_mean("dynprune/prefix_fidelity", float(rec["prefix_fidelity"]))
                    progress.update(1, float(reward) if done else None)
                    if done:
                        logger = self.model.logger.name_to_value
                        append_record(run_dir / "train_log.jsonl", {
                            "timesteps": self.num_timesteps,
                            "episode": rec.get("episode"),
                            "reward": float(reward),
                            "loss": logger.get("train/loss"),
                            "epsilon": float(self.model.exploration_rate),
                        })
                return True

        return Callback()


def _legacy_run(run_dir: Path) -> bool:
    """A train run written before run markers: its config.json names an agent and episodes, and it has a checkpoint."""
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and {"agent", "episodes"} <= set(cfg) and (run_dir / CHECKPOINT).is_file()


def _resume_config(run_dir: Path, args: argparse.Namespace) -> RunConfig:
    """The config of the run to resume, with the changes ``--resume`` allows; refuse any other change."""
    try:
        marker = open_run_folder(run_dir)
    except ValueError:
        if not _legacy_run(run_dir):
            raise
        marker = RunMarker(kind="train", outputs=RUN_OUTPUTS, created=time.strftime("%Y-%m-%d %H:%M:%S"))
        atomic_write_json(run_dir / MARKER, marker.to_dict())
    if marker.kind != "train":
        raise ValueError(f"--run-dir {run_dir} holds a dynprune {marker.kind} run; only train runs resume")
    path = run_dir / "config.json"
    try:
        # through RunConfig: settings a run written before an option existed did not store take its default
        cfg = RunConfig.from_json(json.loads(path.read_text())).to_json()
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path} cannot be read ({err}); restore it, or start the run again with --force") from err
    given = getattr(args, "given_options", set())
    for key in sorted(given & set(cfg)):
        value = getattr(args, key)
        if value != cfg[key] and key not in RESUME_MAY_CHANGE:
            option = "--" + key.replace("_", "-")
            raise ValueError(
                f"{option} {value!r} differs from this run's {cfg[key]!r} ({path}); a resumed run keeps its "
                f"settings: drop {option}, or start a new run in another --run-dir"
            )
    return RunConfig.from_json({**cfg, **{key: getattr(args, key) for key in given & set(RESUME_MAY_CHANGE)}})


class _GivenStore(argparse.Action):
    """argparse's plain ``store`` that also notes the option as given, so ``--resume`` can tell an
    explicit ``--episodes 600`` from the default 600."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given_options = {*getattr(namespace, "given_options", ()), self.dest}


def train(args: argparse.Namespace) -> int:
    """Train an agent; Ctrl-C saves a checkpoint and keeps every finished record."""
    from agents.dqn import DoubleDQN, SB3Agent, make_dqn
    from dynprune.progress import Progress

    run_dir = Path(args.run_dir)
    if args.resume:
        if args.force:
            raise ValueError("--force and --resume contradict each other: --force replaces the run, --resume goes on")
        cfg = _resume_config(run_dir, args)
    else:
        prepare_run_folder(run_dir, "train", RUN_OUTPUTS, force=args.force, resume_hint=True)
        names = set(RunConfig.field_names())
        cfg = RunConfig.from_args(args, **{k: v for k, v in vars(args).items() if k not in NOT_SETTINGS
                                           and k not in names}, created=time.strftime("%Y-%m-%d %H:%M:%S"))
        atomic_write_json(run_dir / "config.json", cfg.to_json())
    run = cfg.extra  # the command's own settings: agent, episodes, checkpoint_every, tensorboard
    env = cfg.make_env("train")
    # --episodes counts episodes and SB3 counts steps: an episode of the train env is one prompt and one step
    # (RunConfig leaves prompts_per_episode at 1; CASRAP's early termination ends that same step), so the step
    # counts below are episode counts. Checked, not assumed.
    if env.unwrapped.prompts_per_episode != 1:
        raise ValueError(f"dynprune train runs one-step episodes; the train env has prompts_per_episode="
                         f"{env.unwrapped.prompts_per_episode}")
    print(f"[train] {run['agent']} on {env.unwrapped.lm.model_id}: {len(env.unwrapped.prompts)} train prompts, "
          f"{run['episodes']} episodes, reward={cfg.reward}, timing={cfg.timing}", flush=True)
    done_steps, first_episode = 0, 0
    if args.resume and (run_dir / CHECKPOINT).is_file():
        model = load_checkpoint(DoubleDQN, run_dir, env)
        done_steps = model.num_timesteps
        if run["episodes"] < done_steps:
            raise ValueError(f"--episodes {run['episodes']} is fewer than the {done_steps} episodes this run has "
                             f"trained; pass --episodes {done_steps} or more")
        # new draws of prompts, scenarios and exploration from here (not a replay of step 0's)
        model.set_random_seed(resume_seed(cfg.seed, done_steps))
        model.tensorboard_log = run.get("tensorboard")
    if args.resume:
        # records past the checkpoint (a kill, a full disk) are measured again: drop them
        point = rewind_logs(run_dir, done_steps)
        first_episode = point.next_episode
        atomic_write_json(run_dir / "config.json", cfg.to_json())  # --episodes may have changed
        print(f"[train] resuming at step {done_steps} (episode {first_episode})"
              + (f"; dropped {point.dropped_records} records written after the checkpoint"
                 if point.dropped_records else ""), flush=True)
    if not done_steps:
        model = make_dqn(env, double=run["agent"] == "ddqn", seed=cfg.seed,
                         learning_starts=min(64, max(8, run["episodes"] // 10)),
                         target_update_interval=max(10, run["episodes"] // 20),
                         tensorboard_log=run.get("tensorboard"))
    remaining = run["episodes"] - done_steps
    agent_name = run["agent"]
    interrupted = False
    if remaining <= 0:
        print(f"[train] the run has its {run['episodes']} episodes; pass --episodes N (more) to train further")
    try:
        with Progress(run["episodes"], "train", "episodes", initial=done_steps) as bar:
            callback = _RecordingCallback.make(run_dir, run["checkpoint_every"], bar, agent_name, first_episode)
            try:
                if remaining > 0:
                    model.learn(remaining, callback=callback, reset_num_timesteps=done_steps == 0)
            except KeyboardInterrupt:
                interrupted = True
        save_checkpoint(model, run_dir)
    except OSError as err:  # a read-only or full disk mid-run: the last checkpoint and its records are intact
        if err.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(err, f"{describe_os_error(err)}; the run is kept up to its last checkpoint: once fixed, "
                               f"continue with: dynprune train --run-dir {run_dir} --resume") from err
    if interrupted:
        print(f"\n[train] interrupted at step {model.num_timesteps}; checkpoint saved. "
              f"Continue with: dynprune train --run-dir {run_dir} --resume", file=sys.stderr)
        return 130
    SB3Agent(model, name=agent_name).save(run_dir / "agent.zip")
    print(f"[train] done: {run_dir / 'agent.zip'}")
    if args.resume and remaining > 0 and (run_dir / "test" / "summary.json").is_file():
        print(f"[train] {run_dir / 'test'} holds the agent before this resume: run dynprune test (and report) again")
    return 0


def test(args: argparse.Namespace) -> int:
    """``dynprune test --run-dir runs/NAME``."""
    run_dir = Path(args.run_dir)
    if not (run_dir / "agent.zip").is_file():
        raise ValueError(f"{run_dir} has no trained agent (agent.zip); run dynprune train first")
    cfg = RunConfig.from_json(json.loads((run_dir / "config.json").read_text()))
    cfg = cfg.replace(**{key: getattr(args, key) for key in ("test_prompts", "test_timing")
                         if getattr(args, key, None) is not None})
    evaluate_run(run_dir, cfg)
    return 0


def main_job(args: argparse.Namespace) -> int:
    """Train a Double DQN on the embedded model, test it on held-out prompts, write the report."""
    from dynprune.report import write_report

    if args.run_dir is None:
        args.run_dir = f"runs/main-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    rc = train(args)
    if rc:
        return rc
    cfg = RunConfig.from_json(json.loads((Path(args.run_dir) / "config.json").read_text()))
    evaluate_run(Path(args.run_dir), cfg)
    paths = write_report(Path(args.run_dir))
    print(f"[main] report: {Path(args.run_dir) / 'report'} ({len(paths)} files) in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_run_args(p: argparse.ArgumentParser, episodes: int, train_prompts: int | None,
                  test_prompts: int | None) -> None:
    p.register("action", None, _GivenStore)  # plain options note that they were given (see _resume_config)
    p.add_argument("--agent", choices=("ddqn", "dqn"), default="ddqn", help="Double DQN or SB3's DQN")
    p.add_argument("--episodes", type=int, default=episodes, help="training episodes (one prompt each)")
    RunConfig.add_arguments(p, defaults={"train_prompts": train_prompts, "test_prompts": test_prompts})
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="write TensorBoard logs (SB3's and the episodes' reward, speed-up, prefix fidelity) under DIR")
    p.add_argument("--force", action="store_true",
                   help="replace the run in --run-dir: delete the files it wrote (other files stay)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its checkpoint (--episodes N to extend it; other settings stay)")


def add_commands(sub: Any) -> None:
    """Add ``train``, ``test`` and ``main`` to the ``dynprune`` sub-command parser."""
    p = sub.add_parser("train", help="train an agent on DynPrune-v0")
    p.add_argument("--run-dir", required=True)
    _add_run_args(p, episodes=600, train_prompts=None, test_prompts=None)
    p.set_defaults(fn=train)

    p = sub.add_parser("test", help="evaluate a trained agent against none / static / random / oracle")
    p.add_argument("--run-dir", required=True)
    # None: the run's own (config.json)
    RunConfig.add_arguments(p, skip=[n for n in RunConfig.field_names() if n not in ("test_prompts", "test_timing")],
                            defaults={"test_prompts": None, "test_timing": None})
    p.set_defaults(fn=test)

    p = sub.add_parser("main", help="the README's main job: train, test and report on the embedded model")
    p.add_argument("--run-dir", default=None, help="default: runs/main-<timestamp>")
    _add_run_args(p, episodes=500, train_prompts=40, test_prompts=10)
    p.set_defaults(fn=main_job)
