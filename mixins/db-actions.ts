/** moleculer-db's generic CRUD actions, switched off: they would bypass every membership and ownership check. */
export const NO_GENERIC_DB_ACTIONS = {
	find: false,
	count: false,
	list: false,
	create: false,
	insert: false,
	get: false,
	update: false,
	remove: false,
} as const;
