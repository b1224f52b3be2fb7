# The offline demo: what a member would type after dropping sales.csv in chat.
import matplotlib.pyplot as plt
import seaborn as sns

df = load_file("sales.csv")
print(f"{len(df)} rows, columns: {', '.join(df.columns)}")
monthly = df.pivot_table(index="month", columns="region", values="revenue", aggfunc="sum")
print(monthly)
print(f"\nBest month: {monthly.sum(axis=1).idxmax()}")

sns.set_theme(style="whitegrid")
ax = sns.barplot(data=df, x="month", y="revenue", hue="region", errorbar=None, estimator="sum")
ax.set_title("Revenue by month and region")
plt.tight_layout()
plt.savefig("revenue_by_month.png", dpi=120)
