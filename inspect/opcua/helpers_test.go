package opcua

import "github.com/conduit-ot/conduit/inspect"

type opTest struct{ inspect.Operation }
