/* SPDX-License-Identifier: MIT */
/* pmfault: the fault injector (fault.h) as a command, for shell tests and
 * the soak.
 *   pmfault --listen 127.0.0.1:0 --to HOST:PORT [--port-file F] --rule SPEC...
 * Prints one line per event on stdout; SIGUSR1 arms the rules that wait for
 * a signal; SIGTERM/SIGINT end it. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fault.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: pmfault --to HOST:PORT [--listen ADDR] [--port-file FILE] --rule SPEC...\n"
		"  SPEC: comma-separated key=value: conn=N dir=to-dest|to-src frame=NAME nth=N\n"
		"        bytes=N[K|M] ms=N signal action=drop|delay|corrupt|cut|close|stall|blackhole\n"
		"        delay=MS   e.g. dir=to-src,frame=DONE,action=drop\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, 0, 'l' }, { "to", required_argument, 0, 't' },
		{ "port-file", required_argument, 0, 'p' }, { "rule", required_argument, 0, 'r' },
		{ "help", no_argument, 0, 'h' }, { 0 } };
	const char *listen = "127.0.0.1:0", *to = NULL, *port_file = NULL;
	struct fp_rule rules[16];
	unsigned n = 0;
	struct fp_proxy *p;
	sigset_t set;
	int o, sig;

	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char why[256];
		switch (o) {
		case 'l': listen = optarg; break;
		case 't': to = optarg; break;
		case 'p': port_file = optarg; break;
		case 'r':
			if (n == 16 || fp_parse_rule(optarg, &rules[n++], why, sizeof(why))) {
				fprintf(stderr, "pmfault: %s\n", n == 16 ? "too many rules" : why);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!to) {
		usage(stderr);
		return 2;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int r = fp_start(&p, listen, to, rules, n, stdout);
	if (r) {
		fprintf(stderr, "pmfault: cannot listen on %s: %s\n", listen, strerror(-r));
		return 1;
	}
	printf("listening on %s\n", fp_address(p));
	if (port_file) {
		const char *colon = strrchr(fp_address(p), ':');
		char tmp[512];
		snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
		FILE *f = fopen(tmp, "w");
		if (!f || fprintf(f, "%s\n", colon + 1) < 0 || fclose(f) || rename(tmp, port_file)) {
			fprintf(stderr, "pmfault: cannot write %s\n", port_file);
			fp_stop(p);
			return 1;
		}
	}
	while (!sigwait(&set, &sig)) {
		if (sig == SIGUSR1) {
			printf("fired\n");
			fp_fire(p);
			continue;
		}
		break;
	}
	fp_stop(p);
	return 0;
}
