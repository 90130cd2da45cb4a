# %% [markdown]
# # fmtk from a notebook
#
# A walk-through in cells (`# %%`: VS Code, PyCharm and Jupyter with jupytext open this file as a
# notebook). It trains a model of its own on a dataset of its own with a handler of its own, and
# looks at the result. It runs in about a minute on a laptop CPU, and the test suite runs it
# (`tests/test_docs.py`).

# %%
import torch
from ignite.engine import Events
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fmtk
from fmtk.runs import format_runs_table, list_runs
from fmtk.training.engines import StepEvents

# %% [markdown]
# ## A dataset of its own
# Any split that yields `(x, y)` batches and has a length will do: here DataLoaders over scikit-learn's
# wine table (178 wines, 13 measurements, 3 cultivars), split 60/20/20 and standardised on the
# training split.


# %%
def wine_data(recipe, data_dir, device):
    wine = load_wine()
    rest_x, test_x, rest_y, test_y = train_test_split(
        wine.data, wine.target, test_size=0.2, stratify=wine.target, random_state=recipe.seed
    )
    train_x, valid_x, train_y, valid_y = train_test_split(
        rest_x, rest_y, test_size=0.25, stratify=rest_y, random_state=recipe.seed
    )
    scaler = StandardScaler().fit(train_x)

    def loader(x, y, shuffle=False):
        dataset = TensorDataset(torch.tensor(scaler.transform(x), dtype=torch.float32), torch.tensor(y))
        return DataLoader(dataset, batch_size=recipe.batch_size, shuffle=shuffle)

    splits = [loader(train_x, train_y, shuffle=True), loader(valid_x, valid_y), loader(test_x, test_y)]
    return fmtk.DataSplits(*splits, classes=list(wine.target_names))


# %% [markdown]
# ## A model of its own
# Any `nn.Module` whose output has one score per class.


# %%
class WineNet(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.layers(x)


recipe = fmtk.Recipe(
    name="wine",
    description="a small net on scikit-learn's wine table",
    model=lambda recipe: WineNet(recipe.options["hidden"]),
    data=wine_data,
    optimizer="SGD",
    lr=0.05,
    batch_size=16,
    epochs=8,
    options={"hidden": 32},
)


# %% [markdown]
# ## A handler of its own
# The largest gradient norm of each epoch, read between backward and the optimizer's step,
# written to the epoch's history and kept in the last checkpoint (so a resumed run goes on with it).


# %%
class LargestGradient:
    def __init__(self):
        self.value = torch.tensor(0.0)  # a tensor: no host sync per step

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def track_largest_gradient(run):
    largest = run.keep("largest_gradient", LargestGradient())
    parameters = list(run.model.parameters())

    @run.trainer.on(StepEvents.BACKWARD_COMPLETED)
    def measure(trainer):
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
        largest.value = torch.maximum(largest.value, norm)

    @run.trainer.on(Events.EPOCH_COMPLETED)
    def record(trainer):
        run.history[-1]["largest_gradient"] = float(largest.value)  # a column of metrics.csv too
        largest.value = torch.tensor(0.0)


# %% [markdown]
# ## Train
# Keyword arguments override the recipe's values and are checked like `--set`. The model that comes
# back holds the weights of the best checkpoint (the best valid accuracy).

# %%
result = fmtk.fit(recipe, device="cpu", output_dir="runs", handlers=[track_largest_gradient], hidden=64)
print(result)  # in Jupyter, `result` alone shows the same

# %%
for row in result.history[-3:]:
    print(row["epoch"], f"{row['valid_accuracy']:.3f}", f"{row['largest_gradient']:.2f}")
assert all("largest_gradient" in row for row in result.history)

# %% [markdown]
# ## Look at the result
# Per-class precision, recall and F1 of the best checkpoint on the test split, and its confusion
# matrix as a picture. A recipe made in Python is given back to `evaluate` (fmtk cannot import it
# again by name).

# %%
evaluation = fmtk.evaluate(result.run_dir, recipe=recipe, device="cpu")
print(evaluation.table())
picture = evaluation.picture("wine: best checkpoint, test split")  # a PIL image: shown by Jupyter
assert evaluation.accuracy == result.test["best"]["accuracy"] > 0.8

# %% [markdown]
# ## Compare runs
# The table `fmtk runs` prints.

# %%
print(format_runs_table(list_runs(result.run_dir.parent.parent)))
