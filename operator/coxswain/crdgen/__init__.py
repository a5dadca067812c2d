"""CRD generation from the pydantic API models (`coxswain generate crds`).

`schema` turns a pydantic JSON schema into a structural OpenAPI v3 schema, `definitions`
wraps it into CustomResourceDefinitions, `output` writes them as stable YAML.
"""
