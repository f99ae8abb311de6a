"""moto_server for Baton's AWS tests, with changes that keep moto's behaviour but make a call
cost what it touches rather than what the table or queue holds.

Stock moto (5.x) deep-copies every table a TransactWriteItems call names, to roll back on
failure, and answers a Query on a partition by sorting every item of the table. Baton keeps
everything in one table, so both grow with all data stored so far and a run of a thousand
conversations would take days. Here a transaction snapshots only the items it names and puts
back just those when it is cancelled, and a Query of one partition looks at that partition.
Conditions, errors and results are moto's own: its code does the work in both cases.

Per-request costs are cut as well. SQS builds a queue's whole attribute map, counting its
visible, delayed and in-flight messages one by one through datetime arithmetic, three times on
every send and once for every message received, only to read ContentBasedDeduplication or
MessageRetentionPeriod from it: here the counts are left at 0 on those two paths (nothing there
reads them; GetQueueAttributes still counts) and the clock is read with time.time() (the same
value). The server lists moto's package directory on every request to route it: here the
listing is read once.

If this moto lacks what the changes rely on, they are left out (with a note on stderr) and the
server is stock moto: slower, never different. If this interpreter has no moto at all, the
moto_server on PATH runs instead.

Usage: python3 moto_server.py [moto_server's arguments]
"""

import copy
import inspect
import os
import sys
import threading


def patch():
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import DynamoDBBackend, get_filter_expression
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    query_signature = inspect.signature(Table.query)
    for name in ("hash_key", "index_name"):
        if name not in query_signature.parameters:
            raise AttributeError(f"Table.query has no parameter {name}")
    stock_all_items = Table.all_items
    stock_query = Table.query
    scope = threading.local()

    def all_items(self):
        """The items of the partition a Query on this thread is reading, else all."""
        partition = getattr(scope, "partition", None)
        if partition is None or partition[0] is not self:
            return stock_all_items(self)
        held = self.items.get(partition[1])
        if held is None:
            return []
        items = list(held.values()) if self.range_key_attr else [held]
        return sorted(items, key=lambda x: (x.hash_key, x.range_key) if x.range_key else x.hash_key)

    def query(self, *args, **kwargs):
        bound = query_signature.bind(self, *args, **kwargs)
        hash_key = bound.arguments.get("hash_key")
        if bound.arguments.get("index_name") or hash_key is None:
            return stock_query(self, *args, **kwargs)
        scope.partition = (self, hash_key)
        try:
            return stock_query(self, *args, **kwargs)
        finally:
            scope.partition = None

    def item_key(table, op_type, op):
        attrs = op["Item"] if op_type == "Put" else op["Key"]
        hash_value = DynamoType(attrs[table.hash_key_attr])
        range_value = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
        return hash_value, range_value

    def restore(snapshots):
        for table, hash_value, range_value, before in reversed(snapshots):
            if range_value is not None:
                if before is None:
                    if hash_value in table.items:
                        table.items[hash_value].pop(range_value, None)
                else:
                    table.items[hash_value][range_value] = before
            elif before is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = before

    def transact_write_items(self, transact_items):
        # moto 5.2's transact_write_items, with the whole-table backups replaced by copies of
        # the items the transaction names.
        if len(transact_items) > 100:
            raise TooManyTransactionsException()
        snapshots = []
        for item in transact_items:
            op_type, op = next(iter(item.items()))
            table = self.tables.get(op.get("TableName"))
            if table is None or op_type not in {"Put", "Delete", "Update"}:
                continue
            try:
                hash_value, range_value = item_key(table, op_type, op)
                before = table.get_item(hash_value, range_value)
            except Exception:  # noqa: E722 the operation fails validation before it writes
                continue
            snapshots.append((table, hash_value, range_value, copy.deepcopy(before)))

        target_items = set()

        def check_unicity(table_name, key):
            item = (str(table_name), str(dict(sorted(key.items()))))
            if item in target_items:
                raise MultipleTransactionsException()
            target_items.add(item)

        errors = []
        for item in transact_items:
            original_item = None
            if len(list(item.keys())) > 1:
                raise TransactWriteSingleOpException
            try:
                op_type, op = next(iter(item.items()))
                if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                    raise ValueError("Unsupported transaction operation")
                table_name = op["TableName"]
                condition_expression = op.get("ConditionExpression")
                expression_attribute_names = op.get("ExpressionAttributeNames")
                expression_attribute_values = op.get("ExpressionAttributeValues")
                return_values = op.get("ReturnValuesOnConditionCheckFailure")
                if op_type == "Put":
                    attrs = op["Item"]
                    table = self.get_table(table_name)
                    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                    if table.range_key_attr is not None:
                        key[table.range_key_attr] = attrs[table.range_key_attr]
                else:
                    key = op["Key"]
                check_unicity(table_name, key)
                current = self.get_item(table_name, key)
                if condition_expression is not None:
                    condition_op = get_filter_expression(
                        condition_expression, expression_attribute_names, expression_attribute_values
                    )
                    if not condition_op.expr(current):
                        if return_values == "ALL_OLD" and current:
                            original_item = current.to_json()["Attributes"]
                        raise ConditionalCheckFailed(item=original_item)
                conditions = dict(
                    condition_expression=condition_expression,
                    expression_attribute_names=expression_attribute_names,
                    expression_attribute_values=expression_attribute_values,
                )
                if op_type == "Put":
                    self.put_item(table_name, op["Item"], **conditions)
                elif op_type == "Delete":
                    self.delete_item(table_name, key, **conditions)
                elif op_type == "Update":
                    self.update_item(table_name, key, update_expression=op["UpdateExpression"], **conditions)
                errors.append((None, None, None))
            except (MultipleTransactionsException, MockValidationException):
                restore(snapshots)
                raise
            except ConditionalCheckFailed as e:
                errors.append(("ConditionalCheckFailed", str(e.message), original_item))
            except Exception as e:  # noqa: E722 moto's own handling: report, then roll back
                errors.append((type(e).__name__, str(e), original_item))
        if any(code is not None for code, _, _ in errors):
            restore(snapshots)
            raise TransactionCanceledException(errors)

    Table.all_items = all_items
    Table.query = query
    DynamoDBBackend.transact_write_items = transact_write_items
    patch_per_request_costs()


def patch_per_request_costs():
    import time

    import moto.backends
    import moto.sqs.models as sqs

    stock_unix_time, stock_unix_time_millis = sqs.unix_time, sqs.unix_time_millis

    def unix_time(dt=None):
        return time.time() if dt is None else stock_unix_time(dt)

    def unix_time_millis(dt=None):
        return time.time() * 1000.0 if dt is None else stock_unix_time_millis(dt)

    sqs.unix_time, sqs.unix_time_millis = unix_time, unix_time_millis

    uncounted = threading.local()

    def without_counts(call):
        def wrapped(self, *args, **kwargs):
            depth = getattr(uncounted, "depth", 0)
            uncounted.depth = depth + 1
            try:
                return call(self, *args, **kwargs)
            finally:
                uncounted.depth = depth

        return wrapped

    def counted_unless_inside(count):
        return property(lambda queue: 0 if getattr(uncounted, "depth", 0) else count.fget(queue))

    for name in (
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    ):
        setattr(sqs.Queue, name, counted_unless_inside(getattr(sqs.Queue, name)))
    for name in ("send_message", "send_message_batch", "is_message_valid_based_on_retention_period"):
        setattr(sqs.SQSBackend, name, without_counts(getattr(sqs.SQSBackend, name)))
    modules = list(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules


if __name__ == "__main__":
    try:
        from moto.server import main
    except ImportError:
        # This interpreter has no moto: run the moto_server on PATH as it is.
        os.execvp("moto_server", ["moto_server", *sys.argv[1:]])
    try:
        patch()
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        print(f"moto_server.py: running stock moto ({e!r})", file=sys.stderr)
    main(sys.argv[1:])
