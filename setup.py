"""Maps the top-level part folders into the one `lorafleet` import namespace."""

from setuptools import find_packages, setup

PARTS = {
    "lorafleet": "lorafleet",
    "lorafleet.train": "train",
    "lorafleet.serve": "serve",
    "lorafleet.evaluate": "evaluate",
    "lorafleet.human_review": "human_review",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for package, folder in PARTS.items():
    package_dir[package] = folder
    packages.append(package)
    for sub in find_packages(folder):
        packages.append(f"{package}.{sub}")
        package_dir[f"{package}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

DATA = ["*.html", "*.j2", "*.jinja", "*.jinja2", "*.yaml", "*.yml", "*.ini", "*.mako",
        "*.css", "*.js", "*.json", "*.md", "*.txt", "*.c"]

# The Hugging Face `evaluate` module scripts are files to load, not packages to import.
HF_MODULES = {"lorafleet.evaluate.hf_modules": ["*/*.py"]}

setup(packages=packages, package_dir=package_dir, package_data={**{p: DATA for p in packages}, **HF_MODULES})
