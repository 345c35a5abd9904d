"""Out-of-range numbers and unknown names, per command: refused when the command's config is
made (before data, models or files), by a UserError naming the flag. The commands print that
message as their one `error:` line with exit status 2 (each command's CLI tests show it)."""
import pytest

from tic_tf import cli
from tic_tf.analysis import AnalysisConfig
from tic_tf.benchmarking import BenchmarkConfig
from tic_tf.errors import UserError
from tic_tf.iterative_pruning import PruneConfig
from tic_tf.robustness import EvaluationConfig
from tic_tf.serving import ExportConfig
from tic_tf.training import TrainConfig

REQUIRED = {AnalysisConfig: dict(checkpoints=("run",), output_dir="out"),
            EvaluationConfig: dict(checkpoints=("run",), output_dir="out"),
            PruneConfig: dict(checkpoint="run", output_dir="out"),
            ExportConfig: dict(checkpoint="run", output_dir="out")}

CASES = [
    (TrainConfig, "epochs", -1, "--epochs must be at least 1"),
    (TrainConfig, "epochs", 0, "--epochs must be at least 1"),
    (TrainConfig, "batch_size", 0, "--batch_size must be at least 1"),
    (TrainConfig, "timesteps", 0, "--timesteps must be at least 1"),
    (TrainConfig, "tau", 0.0, "--tau must be > 0.5"),
    (TrainConfig, "tau", -2.0, "--tau must be > 0.5"),
    (TrainConfig, "width", 0.0, "--width must be positive"),
    (TrainConfig, "threshold", 0.0, "--threshold must be positive"),
    (TrainConfig, "learning_rate", -0.1, "--learning_rate must be positive"),
    (TrainConfig, "momentum", 1.5, "--momentum must be in [0, 1)"),
    (TrainConfig, "weight_decay", -1e-4, "--weight_decay must be >= 0"),
    (TrainConfig, "alpha", -0.01, "--alpha must be >= 0"),
    (TrainConfig, "seed", -1, "--seed must be >= 0"),
    (TrainConfig, "lr_milestones", (0,), "--lr_milestones must be epochs >= 1"),
    (TrainConfig, "fisher_every", -1, "--fisher_every must be >= 0"),
    (TrainConfig, "train_examples", -5, "--train_examples must be >= 0"),
    (TrainConfig, "surrogate_sharpness", 0.0, "--surrogate_sharpness must be positive"),
    (TrainConfig, "surrogate", "erf", "--surrogate takes arctan, sigmoid, fast_sigmoid, "
     "triangle, rectangle; got erf."),
    (TrainConfig, "neuron", "izhikevich", "--neuron takes lif, if; got izhikevich."),
    (TrainConfig, "reset", "partial", "--reset takes hard, soft; got partial."),
    (TrainConfig, "arch", "resnet50", "--arch takes alexnet, resnet19, resnet34, vgg16; got resnet50."),
    (TrainConfig, "batch_norm", "layer", "--batch_norm takes"),
    (TrainConfig, "mixed_precision", "fp8", "--mixed_precision takes"),
    (TrainConfig, "loss", "focal", "--loss takes ce, alpha, tet; got focal."),
    (TrainConfig, "tet_lambda", 1.0, "--tet_lambda must be in [0, 1), got 1.0."),
    (TrainConfig, "tet_from_epoch", 0, "--tet_from_epoch must be an epoch >= 1, got 0."),
    (TrainConfig, "tet_from_epoch", 3, "--tet_from_epoch switches to TET: it needs --loss=tet."),
    (TrainConfig, "tet_when_stable", 0.0, "--tet_when_stable must be positive, got 0.0."),
    (TrainConfig, "tet_when_stable", 0.1, "--tet_when_stable switches to TET when the Fisher "
     "monitor's centroid settles: it needs --loss=tet and --fisher_every"),
    (TrainConfig, "energy_table", "7nm", "Unknown energy table '7nm'"),
    (AnalysisConfig, "num_samples", 0, "--num_samples must be at least 1"),
    (AnalysisConfig, "window", 0, "--window must be at least 1"),
    (AnalysisConfig, "noise", -0.5, "--noise must be >= 0"),
    (AnalysisConfig, "analyses", ("entropy",), "--analyses takes fisher, windows, diagnostics"),
    (AnalysisConfig, "bn_statistics", "train", "--bn_statistics takes moving, batch"),
    (EvaluationConfig, "eps", -0.1, "--eps must be in [0, 1]"),
    (EvaluationConfig, "eps", 8.0, "--eps must be in [0, 1]"),
    (EvaluationConfig, "pgd_step", -0.01, "--pgd_step must be >= 0"),
    (EvaluationConfig, "pgd_iterations", 0, "--pgd_iterations must be at least 1"),
    (EvaluationConfig, "noise", -1.0, "--noise must be >= 0"),
    (EvaluationConfig, "blur_size", 0, "--blur_size must be at least 1"),
    (EvaluationConfig, "window", (0, 2), "--window takes two positive integers"),
    (EvaluationConfig, "obfuscation_drop", -0.1, "--obfuscation_drop must be >= 0"),
    (EvaluationConfig, "exit_policy", "patience", "--exit_policy takes"),
    (EvaluationConfig, "exit_thresholds", (), "--exit_thresholds needs at least one"),
    (EvaluationConfig, "energy_table", "accumulate=0.9", "missing multiply_accumulate"),
    (EvaluationConfig, "evaluations", ("cw",), "--evaluations takes"),
    (PruneConfig, "rounds", 0, "--rounds must be at least 1"),
    (PruneConfig, "fraction", 1.0, "--fraction"),
    (PruneConfig, "fraction", 0.0, "--fraction"),
    (PruneConfig, "batch_size", 0, "--batch_size must be at least 1"),
    (ExportConfig, "timesteps", 0, "--timesteps must be at least 1"),
    (BenchmarkConfig, "batch_size", 0, "--batch_size must be at least 1"),
    (BenchmarkConfig, "timesteps", (0,), "--timesteps takes positive integers"),
    (BenchmarkConfig, "width", -1.0, "--width must be positive"),
    (BenchmarkConfig, "skip", ("warmup",), "--skip takes"),
]


@pytest.mark.parametrize("config, name, value, message", CASES,
                         ids=[f"{c.__name__}-{n}={v}" for c, n, v, _ in CASES])
def test_an_out_of_range_number_or_unknown_name_is_refused_naming_its_flag(config, name,
                                                                           value, message):
    with pytest.raises(UserError) as error:
        config(**REQUIRED.get(config, {}), **{name: value})
    assert message in str(error.value)


def test_attack_surrogates_are_sharpnesses_names_or_both_and_nothing_else():
    required = ["--checkpoints=run", "--output_dir=out"]
    config = cli.parse(EvaluationConfig,
                       [*required, "--attack_surrogates=1.5,sigmoid,triangle:0.5"])
    assert config.attack_surrogates == ((None, 1.5), ("sigmoid", None), ("triangle", 0.5))
    for value in ("erf", "sigmoid:-2", "0", "sigmoid:x"):
        with pytest.raises(UserError, match=f"--attack_surrogates: '{value}' names no "
                                            "surrogate: give a positive sharpness"):
            cli.parse(EvaluationConfig, [*required, f"--attack_surrogates={value}"])
