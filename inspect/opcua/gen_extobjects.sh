#!/bin/sh
# Regenerates extobjects_gen.go from the gopcua version in go.mod.
set -e
M=$(go list -m -f '{{.Dir}}' github.com/gopcua/opcua)/ua
V=$(go list -m -f '{{.Version}}' github.com/gopcua/opcua)
echo "// Code generated from github.com/gopcua/opcua $V ua/register_extobjs_gen.go; DO NOT EDIT."
echo '// Regenerate with: go generate ./inspect/opcua (see gen.go).'
echo
echo 'package opcua'
echo
echo 'import ('
echo '	"reflect"'
echo
echo '	"github.com/gopcua/opcua/id"'
echo '	"github.com/gopcua/opcua/ua"'
echo ')'
echo
echo '// extObjectTypes maps the ns=0 binary encoding ids of the standard'
echo '// structures to the gopcua types whose field layout is their schema.'
echo 'var extObjectTypes = map[uint32]reflect.Type{'
grep -o 'RegisterExtensionObject(NewNumericNodeID(0, id\.[A-Za-z0-9_]*), new([A-Za-z0-9]*))' "$M/register_extobjs_gen.go" |
	sed -E 's/.*id\.([A-Za-z0-9_]+)\), new\(([A-Za-z0-9]+)\)\)/	id.\1: reflect.TypeFor[ua.\2](),/'
echo '}'
