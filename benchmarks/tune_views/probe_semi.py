"""Tuning study, round 3: semi-supervised probes and SSL + classical features on TUNING data (generator seed 1).

`lr`: the probe stage's L2 softmax probe on the labelled images; `self`: scikit-learn SelfTrainingClassifier
(logistic regression, pseudo-labels above p 0.9) and `spread`: LabelSpreading (k-NN graph on 32 PCA components),
both also given the UNLABELLED rest of the split's train part (never its test part). Feature sets: the encoder's
layer3+4 /d4 readout, the classical features, both standardised and concatenated. Split seeds 1000-1019, n = 1,
2, 4, 8, median test accuracy. WORK holds stacks.npz (pretrain_variants.py) and <encoder>.pt.

    python benchmarks/tune_views/probe_semi.py WORK simclr-paper0.5-1.0-bf16 lr,spread,self
"""
import sys, numpy as np, torch, warnings
from sklearn.preprocessing import StandardScaler
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import SelfTrainingClassifier, LabelSpreading
from sklearn.decomposition import PCA
from nanomorph.models.encoder import load_encoder
from nanomorph.probe.classical import classical_features
from nanomorph.probe.features import extract_features
from nanomorph.probe.linear import fit_linear_probe
from nanomorph.probe.splits import as_rule, nested_label_subsets
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
WORK = sys.argv.pop(1)
z = np.load(f"{WORK}/stacks.npz"); labels, whole = z["labels"], z["t64"]
enc = load_encoder(f"{WORK}/{sys.argv[1]}.pt")[0]
F = extract_features(enc, whole, stages=("layer3", "layer4"), dihedral=True)
C = classical_features(whole)
SIZES, SEEDS = [1, 2, 4, 8], range(1000, 1020)
def zs(a): return StandardScaler().fit_transform(a)
sets = {"ssl": F, "classical": C, "ssl+classical": np.concatenate([zs(F), zs(C)], 1)}
classes = np.unique(labels)
def run(name, X, how):
    acc = {n: [] for n in SIZES}
    for seed in SEEDS:
        train, test = as_rule(0.2).train_test(labels, seed)
        for n, fit in nested_label_subsets(labels, train, SIZES, seed).items():
            if how == "lr":
                pred = fit_linear_probe(X[fit], labels[fit], C=1.0, max_iter=2000).predict(X[test])
            else:
                sc = StandardScaler().fit(X[train]); Xt = sc.transform(X)  # unlabelled pool = train part
                y = np.full(len(train), -1); pos = {i: k for k, i in enumerate(train)}
                for i in fit: y[pos[i]] = np.searchsorted(classes, labels[i])
                if how == "self":
                    m = SelfTrainingClassifier(LogisticRegression(C=1.0, max_iter=2000), threshold=0.9).fit(Xt[train], y)
                elif how == "spread":
                    Xp = PCA(32, random_state=0).fit(Xt[train]); m = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2).fit(Xp.transform(Xt[train]), y)
                    pred = classes[m.predict(Xp.transform(Xt[test]))]; acc[n].append(float((pred == labels[test]).mean())); continue
                pred = classes[m.predict(Xt[test])]
            acc[n].append(float((pred == labels[test]).mean()))
    med = {n: round(float(np.median(v)), 4) for n, v in acc.items()}
    print(name, how, med, "mean", round(float(np.mean(list(med.values()))), 4), flush=True)
for name, X in sets.items():
    for how in sys.argv[2].split(","):
        run(name, X, how)
