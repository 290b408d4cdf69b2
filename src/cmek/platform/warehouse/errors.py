"""The refusals of a warehouse query, each with a stable code (docs/api.md)."""

from __future__ import annotations

from cmek.errors import CmekError


class ConnectorError(CmekError):
    """The warehouse refused the SQL (syntax, unknown table, ...): its first line."""

    code = "warehouse_error"


class SqlNotReadOnly(ConnectorError):
    code = "sql_not_read_only"


class InvalidConnection(ConnectorError):
    code = "invalid_connection"


class EgressDenied(InvalidConnection):
    """The connection leads somewhere the operator does not allow tenants to reach."""

    code = "egress_denied"


class WarehouseAuthFailed(ConnectorError):
    code = "warehouse_auth_failed"


class WarehouseUnreachable(ConnectorError):
    code = "warehouse_unreachable"


class WarehouseNotVerified(ConnectorError):
    """TLS to the warehouse failed: no TLS, an unknown CA, or a certificate for another
    name. The password was not sent."""

    code = "warehouse_tls_failed"


class QueryTimeout(ConnectorError):
    code = "query_timeout"


class QueryResourcesExceeded(ConnectorError):
    """The query's process ran out of its memory or CPU time and was stopped."""

    code = "query_resources_exceeded"


class QueryResultTooLarge(ConnectorError):
    code = "query_result_too_large"


class TooManyQueries(ConnectorError):
    """This tenant already has as many queries running as it may."""

    code = "too_many_queries"


ERRORS: dict[str, type[ConnectorError]] = {
    cls.code: cls for cls in (
        ConnectorError, SqlNotReadOnly, InvalidConnection, EgressDenied, WarehouseAuthFailed,
        WarehouseUnreachable, WarehouseNotVerified, QueryTimeout, QueryResourcesExceeded,
        QueryResultTooLarge, TooManyQueries)
}
