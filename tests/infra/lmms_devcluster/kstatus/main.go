// kstatus-check computes the kstatus status (sigs.k8s.io/cli-utils/pkg/kstatus) of
// objects: it reads a JSON array of objects on stdin and writes a JSON array of
// {"status": ..., "message": ...} on stdout, one per object. The tests use it to check
// that EvalRun status follows the kstatus conventions that Flux, Argo CD and
// kpt/cli-utils rely on.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading objects:", err)
		os.Exit(2)
	}
	// apimachinery's decoder keeps integers int64, as unstructured objects need.
	var objs []map[string]interface{}
	if err := utiljson.Unmarshal(data, &objs); err != nil {
		fmt.Fprintln(os.Stderr, "reading objects:", err)
		os.Exit(2)
	}
	out := make([]result, 0, len(objs))
	for _, obj := range objs {
		res, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			fmt.Fprintln(os.Stderr, "computing status:", err)
			os.Exit(1)
		}
		out = append(out, result{Status: res.Status.String(), Message: res.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
