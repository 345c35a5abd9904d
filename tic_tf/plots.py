"""PNG plots of Fisher curves, centroids, heat maps and window deficits, alone or as panels of
one figure (matplotlib figures drawn without pyplot, so importing this module changes no
global matplotlib state)."""
import io
import os

import numpy as np
from matplotlib.figure import Figure  # without pyplot: no global backend, no open figures

from tic_tf.atomic import partial_path


class Panels:
    """One figure of `rows` x `count` panels; each drawing method fills the next panel, row
    by row.

        figure = Panels(2)
        figure.centroids({"T=4": (epochs, ics)})
        figure.fisher_curves({"epoch 300": fisher})
        figure.save("fig1.png")
    """

    def __init__(self, count, panel_size=(5, 3.5), rows=1):
        self.figure = Figure(figsize=(panel_size[0] * count, panel_size[1] * rows),
                             layout="constrained")  # no title overlaps the row above
        self.axes = iter(self.figure.subplots(rows, count, squeeze=False).flat)

    def fisher_curves(self, curves, title="Temporal Fisher information"):
        """I_t against t, one line per label in `curves` ({label: values})."""
        axis = next(self.axes)
        for label, values in curves.items():
            axis.plot(np.arange(1, len(values) + 1), values, marker="o", label=str(label))
        axis.set_xticks(range(1, max(len(v) for v in curves.values()) + 1))
        axis.set_xlabel("timestep t")
        axis.set_ylabel("I_t")
        axis.set_title(title)
        axis.legend(fontsize="small")

    def lines(self, series, xlabel, ylabel, title="", log=False):
        """y against x, one line per label ({label: (x, y)}); a single unlabelled series
        draws no legend."""
        axis = next(self.axes)
        for label, (x, y) in series.items():
            axis.plot(x, y, marker="o" if len(x) <= 60 else None, label=str(label))
        if log:
            axis.set_yscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        if len(series) > 1 or next(iter(series)) is not None:
            axis.legend(fontsize="small")

    def centroids(self, series, title="Information centroid during training"):
        """Information centroid against epoch, one line per label ({label: (epochs,
        values)})."""
        self.lines(series, "epoch", "information centroid", title)

    def grouped_bars(self, groups, ylabel, title=""):
        """One group of bars per label ({label: {category: value}}), the categories of the
        first group side by side in each, e.g. accuracy per evaluation per model."""
        axis = next(self.axes)
        categories = list(next(iter(groups.values())))
        width = 0.8 / len(groups)
        for index, (label, values) in enumerate(groups.items()):
            axis.bar(np.arange(len(categories)) + index * width,
                     [values[c] for c in categories], width, label=str(label))
        axis.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.legend(fontsize="small")

    def heatmap(self, matrix, row_labels, column_labels, title="", xlabel="", ylabel=""):
        """A heat map of `matrix` [rows, columns], e.g. layer x timestep."""
        axis = next(self.axes)
        image = axis.imshow(np.asarray(matrix, dtype=float), aspect="auto", cmap="viridis")
        every = -(-len(column_labels) // 10)  # at most about 10 column labels
        columns = range(0, len(column_labels), every)
        axis.set_xticks(columns, [str(list(column_labels)[c]) for c in columns])
        axis.set_yticks(range(len(row_labels)), [str(r) for r in row_labels], fontsize="small")
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        self.figure.colorbar(image, ax=axis)

    def timestep_accuracy(self, results, title=""):
        """Accuracy from timesteps 1..t and from timestep t alone, per batch-norm statistics
        mode ({mode: diagnostics JSON})."""
        axis = next(self.axes)
        for mode, result in results.items():
            timesteps = np.arange(1, len(result["accuracy_at"]) + 1)
            line, = axis.plot(timesteps, result["accuracy_upto"], marker="o",
                              label=f"{mode}: 1..t")
            axis.plot(timesteps, result["accuracy_at"], marker="x", linestyle="--",
                      color=line.get_color(), label=f"{mode}: t alone")
            axis.set_xticks(timesteps)
        axis.set_xlabel("timestep t")
        axis.set_ylabel("accuracy")
        axis.set_ylim(0, 1)
        axis.set_title(f"Accuracy per timestep {title}".strip())
        axis.legend(fontsize="small")

    def exit_curves(self, curves, title="Early exit"):
        """Accuracy against mean timesteps used, one line per label ({label: ExitCurve
        JSON}) over its thresholds, with its full-T point (square) and oracle (star)."""
        axis = next(self.axes)
        for label, curve in curves.items():
            points = curve["points"]
            line, = axis.plot([p["mean_timesteps"] for p in points],
                              [100 * p["accuracy"] for p in points], marker="o",
                              label=str(label))
            for key, marker in (("full", "s"), ("oracle", "*")):
                axis.plot(curve[key]["mean_timesteps"], 100 * curve[key]["accuracy"],
                          marker=marker, markersize=10, linestyle="none",
                          color=line.get_color())
        policy = next(iter(curves.values()))["policy"]
        axis.set_xlabel("mean timesteps used")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(f"{title}, {policy} policy\n(square: all timesteps, star: oracle)")
        axis.legend(fontsize="small")

    def operations_per_layer(self, report, title="Operations per image"):
        """Per layer: the spiking network's operations over all timesteps against the
        equivalent ANN's MACs (`OperationCounts.to_json()`), on a log scale."""
        axis = next(self.axes)
        layers = report["layers"]
        positions = np.arange(len(layers))
        axis.bar(positions - 0.2, [sum(layer["per_timestep"]) for layer in layers], 0.4,
                 label="SNN, all timesteps")
        axis.bar(positions + 0.2, [layer["ann_macs"] for layer in layers], 0.4,
                 label="ANN MACs")
        axis.set_xticks(positions, [layer["name"] for layer in layers], rotation=90,
                        fontsize="x-small")
        axis.set_yscale("log")
        axis.set_ylabel("operations")
        axis.set_title(title)
        axis.legend(fontsize="small")

    def window_deficits(self, starts, values, window=3, relative=True,
                        title="Time-window deficits"):
        """Accuracy (relative to the last window's) with noise in timesteps [t, t+window-1]."""
        axis = next(self.axes)
        axis.bar([str(t) for t in starts], values)
        if relative:
            axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xlabel(f"first noisy timestep t (window of {window})")
        axis.set_ylabel("accuracy / accuracy of last window" if relative else "accuracy")
        axis.set_title(title)

    def accuracy_vs_sparsity(self, series, title=""):
        """Accuracy against sparsity, one line per label ({label: (sparsity, accuracy)})."""
        axis = next(self.axes)
        for label, (sparsity, accuracy) in series.items():
            axis.plot(100 * np.asarray(sparsity), 100 * np.asarray(accuracy), marker="o",
                      label=str(label))
        axis.set_xlabel("sparsity (%)")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"Accuracy against sparsity {title}".strip())
        axis.legend(fontsize="small")

    def save(self, path=None):
        """Write the figure as PNG at `path` atomically; returns the PNG bytes."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        data = buffer.getvalue()
        if path is not None:
            partial = partial_path(path)
            with open(partial, "wb") as handle:
                handle.write(data)
            os.replace(partial, path)
        return data


# One-panel figures, each written to `path` (if given) and returned as PNG bytes.

def fisher_curves(curves, path=None, title="Temporal Fisher information"):
    figure = Panels(1)
    figure.fisher_curves(curves, title)
    return figure.save(path)


def centroids(epochs, values, path=None):
    figure = Panels(1)
    figure.centroids({None: (epochs, values)})
    return figure.save(path)


def centroids_by_label(series, path=None):
    figure = Panels(1)
    figure.centroids(series)
    return figure.save(path)


def heatmap(matrix, row_labels, column_labels, path=None, title="", xlabel="", ylabel=""):
    # Room for a title, tick labels and a colour bar however few the rows or columns, and no
    # wider than TensorBoard's image cards show legibly however many (e.g. epochs).
    figure = Panels(1, panel_size=(min(7.0, max(4.5, 2.5 + 0.45 * len(column_labels))),
                                   max(3.0, 1.5 + 0.35 * len(row_labels))))
    figure.heatmap(matrix, row_labels, column_labels, title, xlabel, ylabel)
    return figure.save(path)


def firing_heatmap(firing, title, path=None):
    """Spike rate per LIF layer (rows, {layer: rates per timestep}) and timestep."""
    rates = np.stack(list(firing.values()))
    return heatmap(rates, list(firing), range(1, rates.shape[1] + 1), path, title=title,
                   xlabel="timestep")


def timestep_accuracy(results, path=None, title=""):
    figure = Panels(1)
    figure.timestep_accuracy(results, title)
    return figure.save(path)


def exit_curves(curves, path=None, title="Early exit"):
    figure = Panels(1)
    figure.exit_curves(curves, title)
    return figure.save(path)


def operations_per_layer(reports, path=None):
    """One panel per label ({label: OperationCounts JSON})."""
    figure = Panels(len(reports), panel_size=(8, 4.5))
    for label, report in reports.items():
        figure.operations_per_layer(report, f"Operations per image, {label}")
    return figure.save(path)


def window_deficits(starts, values, path=None, window=3, relative=True):
    figure = Panels(1)
    figure.window_deficits(starts, values, window, relative)
    return figure.save(path)


def accuracy_vs_sparsity(series, path=None, title=""):
    figure = Panels(1)
    figure.accuracy_vs_sparsity(series, title)
    return figure.save(path)
