package opcua

//go:generate sh -c "./gen_extobjects.sh > extobjects_gen.go && gofmt -w extobjects_gen.go"
