#!/usr/bin/python3
"""Draw bench/growth.png from bench/results.json: one more pod's ADD and DEL latency against live pods, ours
against the reference, and the nftables rules on the node at each point. Uses Debian's python3-matplotlib."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, png_path):
    with open(results_path) as f:
        results = json.load(f)
    fig, (lat, rules) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    styles = {"ours_chain": ("tab:green", "ours"), "ref_ptp_masq": ("tab:red", "reference"), "floor": ("tab:gray", "floor")}
    for key, series in results["growth"].items():
        color, short = styles.get(key, ("tab:gray", key))
        live = [level["live"] for level in series["levels"]]
        for verb, marker, dash in (("add", "o", "-"), ("del", "s", "--")):
            medians = [level[verb]["median"] for level in series["levels"]]
            lat.plot(live, medians, dash, marker=marker, color=color, label=f"{short} {verb.upper()}")
        # A twin kept at the first level, sampled in the same turns: what the growth is read against.
        if all(level.get("alongside") for level in series["levels"]):
            kept = [level["alongside"]["add"]["median"] for level in series["levels"]]
            lat.plot(live, kept, ":", marker=".", color=color, label=f"{short} ADD, twin at {live[0]} pod(s)")
        rules.plot(live, [level["rules"] for level in series["levels"]], "-o", color=color, label=series["label"])
    lat.set_xlabel("live pods on the node")
    lat.set_ylabel("median latency of one more pod (ms)")
    lat.set_ylim(bottom=0)
    lat.grid(alpha=0.3)
    lat.legend(fontsize=8)
    lat.set_title("ADD and DEL latency", fontsize=10)
    rules.set_xlabel("live pods on the node")
    rules.set_ylabel("nftables rules on the node")
    rules.set_yscale("symlog")
    rules.grid(alpha=0.3)
    rules.legend(fontsize=7)
    rules.set_title("rules", fontsize=10)
    fig.suptitle(results["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
