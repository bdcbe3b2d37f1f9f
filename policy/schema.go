package policy

import (
	"context"
	_ "embed"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"
)

// InputSchema is the JSON Schema (draft-07) of the input document. A copy
// is published as docs/policy-input.schema.json (a test keeps the two
// identical).
//
//go:embed input.schema.json
var InputSchema []byte

var schemaCheck struct {
	once sync.Once
	pq   rego.PreparedEvalQuery
	err  error
}

// ValidateDocument checks a JSON input document against InputSchema, with
// OPA's json.match_schema. It is for tools and tests (`conduit policy eval`
// checks hand-written inputs with it), not for the data path.
func ValidateDocument(ctx context.Context, doc []byte) error {
	schemaCheck.once.Do(func() {
		var schema any
		if err := util.UnmarshalJSON(InputSchema, &schema); err != nil {
			schemaCheck.err = fmt.Errorf("policy: input schema: %w", err)
			return
		}
		schemaCheck.pq, schemaCheck.err = rego.New(
			rego.Query("[ok, errors] := json.match_schema(input, data.schema)"),
			rego.Store(inmem.NewFromObject(map[string]any{"schema": schema})),
		).PrepareForEval(context.Background())
	})
	if schemaCheck.err != nil {
		return schemaCheck.err
	}
	var x any
	if err := util.UnmarshalJSON(doc, &x); err != nil {
		return fmt.Errorf("%w: %v", ErrInput, err)
	}
	v, err := ast.InterfaceToValue(x)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInput, err)
	}
	rs, err := schemaCheck.pq.Eval(ctx, rego.EvalParsedInput(v))
	if err != nil {
		return fmt.Errorf("policy: schema check: %w", err)
	}
	if len(rs) != 1 {
		return fmt.Errorf("policy: schema check: %d results", len(rs))
	}
	if ok, _ := rs[0].Bindings["ok"].(bool); ok {
		return nil
	}
	var msgs []string
	errs, _ := rs[0].Bindings["errors"].([]any)
	for _, e := range errs {
		m, _ := e.(map[string]any)
		field, _ := m["field"].(string)
		desc, _ := m["desc"].(string)
		if desc == "" {
			desc, _ = m["error"].(string)
		}
		msgs = append(msgs, field+": "+desc)
	}
	sort.Strings(msgs)
	return fmt.Errorf("%w: the document does not match the input schema: %s", ErrInput, strings.Join(msgs, "; "))
}
