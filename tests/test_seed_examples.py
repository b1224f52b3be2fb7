"""Every example of the seed document (the Code Interpreter Guide), run as written.

The code strings are the guide's, character for character apart from the file id the
guide tells the reader to substitute ('file_id_here'); the surrounding calls are the
guide's calls on this package. The sandbox has no internet: the package example's
`sns.load_dataset('tips')` works because the venv carries seaborn's example datasets
(interpreter/offline_datasets.py).
"""

from __future__ import annotations

import interpreter
from interpreter import (cleanup_expired_files, delete_user_file, execute_code, get_file_manager,
                         get_interpreter_status, get_package_manager, list_user_files, upload_file)

SALES_CSV = b"units,price,revenue\n3,2.5,7.5\n5,2.0,10.0\n2,4.0,8.0\n7,1.5,10.5\n"


async def test_1_code_execution(engine):
    result = await execute_code(code="print('Hello, world!')", user_id=123456789)
    assert result["success"] is True and result["output"] == "Hello, world!\n"
    assert result["error"] == "" and result["return_code"] == 0


async def test_2_file_upload_and_listing(engine, tmp_path):
    (tmp_path / "data.csv").write_bytes(SALES_CSV)
    with open(tmp_path / "data.csv", "rb") as f:
        result = await upload_file(user_id=123456789, file_data=f.read(), filename='data.csv', file_type='csv',
                                   db_handler=None)
    file_id = result['file_id']
    files = await list_user_files(user_id=123456789, db_handler=None)
    assert [f["file_id"] for f in files] == [file_id]


async def test_3_code_with_file_access(engine):
    result = await upload_file(user_id=123, file_data=SALES_CSV, filename='sales.csv')
    file_id = result['file_id']
    code = """
# load_file() is automatically available
df = load_file('""" + file_id + """')
print(df.head())
print(f"Total rows: {len(df)}")
"""
    result = await execute_code(code=code, user_id=123, user_files=[file_id], db_handler=None)
    assert result["success"], result["error"]
    assert "Total rows: 4" in result["output"] and "revenue" in result["output"]


async def test_4_package_installation_with_seaborn_example_data(engine):
    result = await execute_code(code="""
import seaborn as sns
import matplotlib.pyplot as plt
tips = sns.load_dataset('tips')
plt.figure(figsize=(10, 6))
sns.scatterplot(data=tips, x='total_bill', y='tip')
plt.savefig('plot.png')
print('Plot saved!')
""", user_id=123, install_packages=['seaborn', 'matplotlib'])
    assert result["success"], result["error"]
    assert result["output"] == "Plot saved!\n"
    [plot] = result["generated_files"]
    assert plot["filename"] == "plot.png" and plot["data"].startswith(b"\x89PNG")


async def test_5_data_analysis(engine):
    uploaded = await upload_file(user_id=123, file_data=SALES_CSV, filename="sales.csv")
    code = """
# Load CSV
df = load_file('file_id_here')
# Basic analysis
print(f"Shape: {df.shape}")
print(f"Columns: {df.columns.tolist()}")
print(df.describe())
# Correlation analysis
import seaborn as sns
import matplotlib.pyplot as plt
plt.figure(figsize=(12, 8))
sns.heatmap(df.corr(), annot=True, cmap='coolwarm')
plt.savefig('correlation.png')
""".replace("file_id_here", uploaded["file_id"])
    result = await execute_code(code=code, user_id=123, user_files=[uploaded["file_id"]])
    assert result["success"], result["error"]
    assert "Shape: (4, 3)" in result["output"] and "Columns: ['units', 'price', 'revenue']" in result["output"]
    generated = [file['filename'] for file in result.get('generated_files', [])]
    assert generated == ["correlation.png"]


async def test_file_expiration_and_manual_deletion(engine):
    deleted_count = await cleanup_expired_files(db_handler=None)
    assert deleted_count == 0
    uploaded = await upload_file(user_id=123, file_data=SALES_CSV, filename="sales.csv")
    success = await delete_user_file(file_id=uploaded["file_id"], user_id=123, db_handler=None)
    assert success is True


async def test_status_check(engine):
    status = await get_interpreter_status(db_handler=None)
    for key in ("venv_exists", "python_path", "installed_packages", "package_count", "last_cleanup",
                "total_user_files", "total_file_size_mb", "file_expiration_hours", "max_file_size_mb"):
        assert key in status


async def test_integration_example(engine):
    async def handle_user_request(user_id: int, code: str, files: list, db):
        """Handle a code execution request from a user."""
        uploaded_files = []
        for file_data, filename in files:
            result = await upload_file(user_id=user_id, file_data=file_data, filename=filename, db_handler=db)
            if result['success']:
                uploaded_files.append(result['file_id'])
        result = await execute_code(code=code, user_id=user_id, user_files=uploaded_files,
                                    install_packages=['pandas', 'matplotlib'], timeout=60, db_handler=db)
        if not result['success']:
            return f"❌ Error: {result['error']}"
        response = f"✅ Execution completed in {result['execution_time']:.2f}s\n\n"
        if result['output']:
            response += f"**Output:**\n```\n{result['output']}\n```\n"
        for file in result.get('generated_files', []):
            if file['type'] == 'image':
                response += f"\n📊 Generated: {file['filename']}\n"
        return response

    code = "import matplotlib.pyplot as plt\ndf = load_file(FILES and next(iter(FILES)))\ndf.plot()\nprint(len(df))"
    response = await handle_user_request(7, code, [(SALES_CSV, "sales.csv")], None)
    assert response.startswith("✅ Execution completed in ") and "4" in response
    assert "📊 Generated: figure_1.png" in response


async def test_troubleshooting_examples(engine):
    pm = get_package_manager()
    is_approved, reason = pm.is_package_approved('package_name')
    assert is_approved is False and "not in the approved list" in reason
    fm = get_file_manager(db_handler=None)
    assert await fm.get_file("0" * 32, 123) is None  # "File expired or doesn't exist"
    status = await get_interpreter_status(db_handler=None)
    assert isinstance(status['total_user_files'], int)
    assert await interpreter.cleanup_expired_files(db_handler=None) == 0
