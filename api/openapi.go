package api

import _ "embed"

// OpenAPI is the OpenAPI 3 document describing the API, served at
// /api/v1/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte
