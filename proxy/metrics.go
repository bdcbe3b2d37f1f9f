package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus collectors. A nil *Metrics is valid:
// listeners then count into unregistered collectors (tests, benchmarks).
type Metrics struct {
	conns      *prometheus.GaugeVec
	accepted   *prometheus.CounterVec
	refused    *prometheus.CounterVec
	decisions  *prometheus.CounterVec
	malformed  *prometheus.CounterVec
	auditFails *prometheus.CounterVec
	upstream   *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "conduit", Name: "connections_open",
			Help: "Client connections currently open.",
		}, []string{"listener"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "conduit", Name: "connections_accepted_total",
			Help: "Client connections accepted (after the TLS handshake, when TLS is on).",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "conduit", Name: "connections_refused_total",
			Help: "Client connections refused, by reason (limit, handshake, recheck: cut after a TLS reload withdrew trust in the certificate).",
		}, []string{"listener", "reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "conduit", Name: "decisions_total",
			Help: "Policy decisions on requests, by outcome (allowed, denied).",
		}, []string{"listener", "outcome"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "conduit", Name: "malformed_frames_total",
			Help: "Frames whose framing could not be trusted; each closed its connection.",
		}, []string{"listener", "direction"}),
		auditFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "conduit", Name: "audit_failures_total",
			Help: "Audit events that could not be written (the operation was denied).",
		}, []string{"listener"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "conduit", Name: "upstream_errors_total",
			Help: "Upstream failures answered with a gateway exception, by kind (unreachable, timeout, bad_response).",
		}, []string{"listener", "kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.conns, m.accepted, m.refused, m.decisions, m.malformed, m.auditFails, m.upstream)
	}
	return m
}

// listenerMetrics holds the label-resolved counters of one listener, so the
// per-request path does no label lookup.
type listenerMetrics struct {
	m          *Metrics
	name       string
	conns      prometheus.Gauge
	accepted   prometheus.Counter
	allowed    prometheus.Counter
	denied     prometheus.Counter
	auditFails prometheus.Counter
}

func (m *Metrics) forListener(name string) *listenerMetrics {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &listenerMetrics{
		m:          m,
		name:       name,
		conns:      m.conns.WithLabelValues(name),
		accepted:   m.accepted.WithLabelValues(name),
		allowed:    m.decisions.WithLabelValues(name, "allowed"),
		denied:     m.decisions.WithLabelValues(name, "denied"),
		auditFails: m.auditFails.WithLabelValues(name),
	}
}

func (lm *listenerMetrics) refused(reason string) {
	lm.m.refused.WithLabelValues(lm.name, reason).Inc()
}

func (lm *listenerMetrics) malformed(direction string) {
	lm.m.malformed.WithLabelValues(lm.name, direction).Inc()
}

func (lm *listenerMetrics) upstreamError(kind string) {
	lm.m.upstream.WithLabelValues(lm.name, kind).Inc()
}
