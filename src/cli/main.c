/* SPDX-License-Identifier: MIT */
/* pmigrate: parallel live migration of virtual machines. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: pmigrate COMMAND [options]   (pmigrate COMMAND --help for details)\n"
		"  demo      run a source and a destination VM here, migrate live, verify memory\n"
		"  vm        run a synthetic VM (or wait for one with --incoming)\n"
		"  migrate   migrate the VM behind a control socket to a destination\n"
		"  cancel    cancel the migration running out of a VM\n"
		"  cont      resume a VM (after 'stop', or an unknown migration outcome)\n"
		"  quit      end a VM process\n"
		"  status    show a VM's state, heartbeat and last migration\n"
		"  timeline  draw a migration's JSON report (migrate --json) as an SVG timeline\n"
		"  version   print the version\n");
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	argv++;
	argc--;
	if (!strcmp(cmd, "vm"))
		return cmd_vm(argc, argv);
	if (!strcmp(cmd, "migrate"))
		return cmd_migrate(argc, argv);
	if (!strcmp(cmd, "cancel"))
		return cmd_cancel(argc, argv);
	if (!strcmp(cmd, "cont"))
		return cmd_cont(argc, argv);
	if (!strcmp(cmd, "quit"))
		return cmd_quit(argc, argv);
	if (!strcmp(cmd, "status"))
		return cmd_status(argc, argv);
	if (!strcmp(cmd, "demo"))
		return cmd_demo(argc, argv);
	if (!strcmp(cmd, "timeline"))
		return cmd_timeline(argc, argv);
	if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
		printf("pmigrate %s (wire protocol 1)\n", PMIGRATE_VERSION);
		return 0;
	}
	if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "pmigrate: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
