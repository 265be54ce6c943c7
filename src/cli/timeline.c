/* SPDX-License-Identifier: MIT */
/* pmigrate migrate --timeline FILE.svg: a migration drawn from its JSON
 * report, three panels over one time axis (as QEMU's guestperf plots):
 * MB/s per channel and in all; dirty pages left in the round; the guest's
 * write rate beside the asked one.  Round starts are dashed lines, the
 * pause a shaded band.  Plain SVG, no external tools. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"

#define W 960.0
#define LEFT 70.0
#define RIGHT 20.0
#define PANEL_GAP 34.0

static const char *const colors[] = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
				      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf" };

struct plot {
	FILE *f;
	double t_max, top;      /* time span (ms); current panel's top y */
};

static double num(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) ? json_object_get_double(v) : 0;
}

static double xpos(const struct plot *p, double t_ms)
{
	return LEFT + (W - LEFT - RIGHT) * (p->t_max > 0 ? t_ms / p->t_max : 0);
}

/* A round axis maximum: 1, 2 or 5 x 10^k at or above v. */
static double nice_max(double v)
{
	double e, m;

	if (!(v > 0))
		return 1;
	e = pow(10, floor(log10(v)));
	m = v / e;
	return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * e;
}

static void panel(struct plot *p, double h, double ymax, const char *ylabel)
{
	FILE *f = p->f;

	fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#999'/>\n",
		LEFT, p->top, W - LEFT - RIGHT, h);
	for (int i = 0; i <= 4; i++) {
		double y = p->top + h - h * i / 4;
		fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#eee'/>"
			"<text x='%.1f' y='%.1f' text-anchor='end' font-size='10'>%g</text>\n",
			LEFT, y, W - RIGHT, y, LEFT - 4, y + 3, ymax * i / 4);
	}
	fprintf(f, "<text x='14' y='%.1f' font-size='11' transform='rotate(-90 14 %.1f)' "
		"text-anchor='middle'>%s</text>\n", p->top + h / 2, p->top + h / 2, ylabel);
}

/* Step line of values v[i] over (t[i-1], t[i]]. */
static void steps(struct plot *p, const double *t, const double *v, size_t n, double h, double ymax,
		  const char *color, double width, bool dashed)
{
	if (n < 2)
		return;
	fprintf(p->f, "<polyline fill='none' stroke='%s' stroke-width='%.1f'%s points='", color, width,
		dashed ? " stroke-dasharray='5,3'" : "");
	for (size_t i = 1; i < n; i++) {
		double y = p->top + h - h * (v[i] > ymax ? ymax : v[i]) / ymax;
		fprintf(p->f, "%.1f,%.1f %.1f,%.1f ", xpos(p, t[i - 1]), y, xpos(p, t[i]), y);
	}
	fprintf(p->f, "'/>\n");
}

int timeline_svg(const char *report_json, const char *path, struct pm_err *err)
{
	json_object *o = json_tokener_parse(report_json), *tl, *samples, *rounds, *v;
	size_t n, nch = 0;
	double t[PM_MAX_SAMPLES], total[PM_MAX_SAMPLES], left[PM_MAX_SAMPLES], wr[PM_MAX_SAMPLES];
	double ch[PM_SAMPLE_CHANNELS][PM_MAX_SAMPLES], ymax_rate = 0, ymax_left = 0, ymax_wr = 0;
	struct plot p = { 0 };
	const double h1 = 220, h2 = 110, h3 = 110, top0 = 54;
	int r = 0;

	if (!o || !json_object_object_get_ex(o, "timeline", &tl) ||
	    !json_object_object_get_ex(tl, "samples", &samples) ||
	    !json_object_is_type(samples, json_type_array)) {
		json_object_put(o);
		return pm_err_set(err, EINVAL, "the report has no timeline to draw");
	}
	n = json_object_array_length(samples);
	if (n > PM_MAX_SAMPLES)
		n = PM_MAX_SAMPLES;
	for (size_t i = 0; i < n; i++) {
		json_object *s = json_object_array_get_idx(samples, i), *c;
		t[i] = num(s, "t_ms");
		left[i] = num(s, "dirty_left") * 4096 / 1048576.0;
		wr[i] = num(s, "write_mbps");
		total[i] = 0;
		if (json_object_object_get_ex(s, "channel_mbps", &c)) {
			size_t k = json_object_array_length(c);
			nch = k < PM_SAMPLE_CHANNELS ? k : PM_SAMPLE_CHANNELS;
			for (size_t j = 0; j < nch; j++) {
				ch[j][i] = json_object_get_double(json_object_array_get_idx(c, j));
				total[i] += ch[j][i];
			}
		}
		if (total[i] > ymax_rate)
			ymax_rate = total[i];
		if (left[i] > ymax_left)
			ymax_left = left[i];
		if (wr[i] > ymax_wr)
			ymax_wr = wr[i];
	}
	double asked = num(o, "write_rate_asked_mbps");
	if (asked > ymax_wr)
		ymax_wr = asked;
	ymax_rate = nice_max(ymax_rate);
	ymax_left = nice_max(ymax_left);
	ymax_wr = nice_max(ymax_wr);
	p.t_max = num(o, "total_time_ms");
	if (n && t[n - 1] > p.t_max)
		p.t_max = t[n - 1];

	p.f = fopen(path, "w");
	if (!p.f) {
		json_object_put(o);
		return pm_err_set(err, errno, "cannot write %s: %s", path, strerror(errno));
	}
	FILE *f = p.f;
	double height = top0 + h1 + h2 + h3 + 2 * PANEL_GAP + 40;
	fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%.0f' height='%.0f' "
		"font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n", W, height);
	json_object_object_get_ex(o, "barrier", &v);
	bool barrier = v && json_object_get_boolean(v);
	json_object_object_get_ex(o, "serial", &v);
	bool serial = v && json_object_get_boolean(v);
	json_object *dm = NULL, *why = NULL, *st = NULL;
	json_object_object_get_ex(o, "dirty_method", &dm);
	json_object_object_get_ex(o, "switchover_reason", &why);
	json_object_object_get_ex(o, "status", &st);
	fprintf(f, "<text x='%.0f' y='20' font-size='14' font-weight='bold'>pmigrate: %d channel%s%s, %s"
		" — %s in %.2f s, downtime %.0f ms, %d rounds</text>\n", LEFT, (int)num(o, "channels"),
		num(o, "channels") == 1 ? "" : "s", serial ? " serial" : "",
		barrier ? "barrier rounds" : "barrier-free rounds", st ? json_object_get_string(st) : "?",
		num(o, "total_time_ms") / 1e3, num(o, "downtime_ms"), (int)num(o, "nrounds"));
	fprintf(f, "<text x='%.0f' y='38' font-size='11'>guest writes %.0f MB/s (asked %.0f), dirty "
		"tracking %s, switchover: %s, %.0f MB sent</text>\n", LEFT, num(o, "write_rate_mbps"), asked,
		dm ? json_object_get_string(dm) : "?", why ? json_object_get_string(why) : "-",
		num(o, "bytes_sent") / 1e6);

	/* The pause first, as a band under everything else. */
	double tops[3] = { top0, top0 + h1 + PANEL_GAP, top0 + h1 + h2 + 2 * PANEL_GAP };
	double hs[3] = { h1, h2, h3 };
	/* Within it, from the end of the final round's sends to the end: the
	 * device state and waiting for the destination to apply and resume. */
	double pause = num(o, "pause_at_ms"), completing = 0;
	for (size_t i = 0; i < n; i++) {
		json_object *ph;
		if (json_object_object_get_ex(json_object_array_get_idx(samples, i), "phase", &ph) &&
		    !strcmp(json_object_get_string(ph), "completing")) {
			completing = t[i];
			break;
		}
	}
	if (pause > 0) {
		double x = xpos(&p, pause), x2 = xpos(&p, p.t_max), xc = completing > pause ? xpos(&p, completing) : x2;
		for (int k = 0; k < 3; k++) {
			fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#f8d7d7'/>\n",
				x, tops[k], xc - x > 1 ? xc - x : 1, hs[k]);
			if (x2 > xc)
				fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#ecc0c0'/>\n",
					xc, tops[k], x2 - xc, hs[k]);
		}
		fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' fill='#c00' text-anchor='end'>"
			"paused: final round%s</text>\n", x2, tops[1] - 4,
			x2 > xc ? ", then waiting for the destination (darker)" : "");
	}

	/* Panels. */
	p.top = tops[0];
	panel(&p, h1, ymax_rate, "MB/s sent");
	for (size_t j = 0; j < nch; j++)
		steps(&p, t, ch[j], n, h1, ymax_rate, colors[j % 10], 1.2, false);
	if (nch > 1)
		steps(&p, t, total, n, h1, ymax_rate, "#000", 2, false);
	/* Legend, right-aligned on the subtitle line. */
	for (size_t j = 0; j < nch; j++)
		fprintf(f, "<text x='%.0f' y='38' font-size='10' fill='%s' text-anchor='end'>ch%zu</text>\n",
			W - RIGHT - 36 - 30.0 * (nch - 1 - j), colors[j % 10], j);
	if (nch > 1)
		fprintf(f, "<text x='%.0f' y='38' font-size='10' font-weight='bold' text-anchor='end'>"
			"all</text>\n", W - RIGHT);
	p.top = tops[1];
	panel(&p, h2, ymax_left, "MiB dirty left");
	steps(&p, t, left, n, h2, ymax_left, "#d62728", 1.5, false);
	p.top = tops[2];
	panel(&p, h3, ymax_wr, "guest MB/s");
	steps(&p, t, wr, n, h3, ymax_wr, "#2ca02c", 1.5, false);
	if (asked > 0) {
		double y = tops[2] + h3 - h3 * asked / ymax_wr;
		fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#2ca02c' "
			"stroke-dasharray='5,3'/><text x='%.1f' y='%.1f' font-size='10' fill='#2ca02c'>"
			"asked</text>\n", LEFT, y, W - RIGHT, y, LEFT + 4, y - 3);
	}

	/* Where the throttle changed, on the guest's panel. */
	for (size_t i = 0, last = 0, k = 0; i < n; i++) {
		json_object *smp = json_object_array_get_idx(samples, i);
		size_t thr = (size_t)num(smp, "throttle_pct");
		if (thr != last) {
			double x = xpos(&p, t[i]);
			fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#8c564b'/>"
				"<text x='%.1f' y='%.1f' font-size='10' fill='#8c564b'>throttle %zu%%</text>\n",
				x, tops[2], x, tops[2] + h3, x + 2, tops[2] + 12 + 12.0 * (k++ % 3), thr);
			last = thr;
		}
	}

	/* Round starts and the pause, across all panels. */
	double y0 = tops[0], y1 = tops[2] + h3;
	if (json_object_object_get_ex(o, "rounds", &rounds))
		for (size_t i = 0; i < json_object_array_length(rounds); i++) {
			json_object *rd = json_object_array_get_idx(rounds, i);
			double x = xpos(&p, num(rd, "start_ms"));
			fprintf(f, "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#555' "
				"stroke-dasharray='2,3'/><text x='%.1f' y='%.1f' font-size='10'>r%d</text>\n",
				x, y0, x, y1, x + 2, y0 - 3, (int)num(rd, "round"));
		}
	/* Time axis. */
	double tick = nice_max(p.t_max / 8);
	for (double tt = 0; tt <= p.t_max + 1e-9; tt += tick)
		fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' text-anchor='middle'>%g</text>\n",
			xpos(&p, tt), y1 + 14, tt / 1e3);
	fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>time (s)</text>\n",
		(LEFT + W - RIGHT) / 2, y1 + 30);
	fprintf(f, "</svg>\n");
	if (fclose(f))
		r = pm_err_set(err, errno, "cannot write %s: %s", path, strerror(errno));
	json_object_put(o);
	return r;
}

/* pmigrate timeline REPORT.json OUT.svg: draws a report kept with --json. */
int cmd_timeline(int argc, char **argv)
{
	struct pm_err err = { 0 };
	char *text = NULL;
	size_t cap = 0, len = 0;
	FILE *f;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: pmigrate timeline REPORT.json OUT.svg\n"
		       "  draws the timeline of a migration report written by migrate --json\n");
		return 0;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: pmigrate timeline REPORT.json OUT.svg\n");
		return 2;
	}
	f = fopen(argv[1], "r");
	if (!f) {
		fprintf(stderr, "pmigrate timeline: cannot read %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	for (;;) {
		if (len + 4096 + 1 > cap) {
			char *t = realloc(text, cap = cap ? 2 * cap : 65536);
			if (!t) {
				fclose(f);
				free(text);
				fprintf(stderr, "pmigrate timeline: out of memory\n");
				return 1;
			}
			text = t;
		}
		size_t n = fread(text + len, 1, 4096, f);
		len += n;
		if (n < 4096)
			break;
	}
	fclose(f);
	text[len] = '\0';
	int r = timeline_svg(text, argv[2], &err);
	free(text);
	if (r) {
		fprintf(stderr, "pmigrate timeline: %s: %s\n", argv[1], err.msg);
		return 1;
	}
	return 0;
}
